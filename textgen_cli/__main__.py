from textgen_cli.cli import main

main()
