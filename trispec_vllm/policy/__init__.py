"""TriSpec's decisions, free of vLLM: margins to routes, catch-up, acceptance rules.

Everything here works on plain numpy/torch arrays and runs in milliseconds in
unit tests; `trispec_vllm.engine` turns vLLM's step into these inputs.
"""
