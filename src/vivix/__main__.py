from vivix.cli import main

main()
