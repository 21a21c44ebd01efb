from raybench.errors import run_cli
from raybench.report import main

run_cli(main)
