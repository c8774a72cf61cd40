"""Training spread over torchrun's processes: `--parallel data` (replicas on shards of the
token stream) and `--parallel heads` (each rank trains its own heads' blocks).

`base.Parallelism` is the one-process default whose hooks the runner and trainer call;
`data` and `heads` override them; `distributed` wraps torch.distributed; `modes` picks one.
"""
