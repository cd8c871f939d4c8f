from jit_core.cli import main

main()
