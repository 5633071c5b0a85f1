"""The floor everything stands on: errors, logging and progress, the recipe schema, the stage
table, typed result files and the run folder's layout. Imports nothing else from textgen_cli."""
