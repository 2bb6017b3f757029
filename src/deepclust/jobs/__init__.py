"""One module per command: cluster, evaluate, embed, predict, export, report. Each reads and writes run folders; the CLI only parses and prints."""
