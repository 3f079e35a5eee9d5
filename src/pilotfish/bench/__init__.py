"""The paper's experiments (`pilotfish bench paper`) and the runs they are made of.

`apart`: runs in processes of their own (inside `salloc`), each printing its figures;
`cluster`: the experiments on a real Slurm allocation (the local cluster);
`paper`: both places, beside the paper's figures, as a table, JSON and an HTML page.
"""
