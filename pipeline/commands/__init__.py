"""One module per CLI subcommand: `add_parser(subparsers)` registers it, `args.handler(args)` executes it."""
