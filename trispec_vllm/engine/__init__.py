"""TriSpec inside vLLM 0.32's V1 engine: the only package that imports vLLM.

One module per concern: `patches` lists every change made to vLLM;
`config_hook` validates the `trispec` section and selects the workers;
`workers` / `model_runner` run the step; `forward` runs a model over a
routed sub-batch; `proxy` loads the proxy; `fused_drafter` reuses a draft
model's passes as the proxy's; `batch_inputs` reads vLLM's input batch into
the policy's `StepBatch`; `stats` carries the counters to vLLM's stat loggers;
`cpu_workarounds` holds the vLLM 0.32 CPU fixes (delete on upgrade).
"""
