import sys

from trispec_vllm.fetch.cli import main

sys.exit(main())
