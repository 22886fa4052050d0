from chiefofstate.cli.main import main

main()
