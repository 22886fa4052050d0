from chiefofstate.cli import main

main()
