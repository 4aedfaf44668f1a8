from textldm.cli import main

main()
