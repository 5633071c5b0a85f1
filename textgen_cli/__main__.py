from textgen_cli.cli.app import main

main()
