"""One module per CLI subcommand: `add_parser(subparsers)` registers it, `args.run(args)` executes it."""
