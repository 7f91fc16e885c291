"""Token geometry and attention arithmetic: the layer below both the adapters (model -> capture) and the methods
(capture -> map). Nothing here knows a model or a capture type beyond ``TokenLayout``.

* ``geometry``  — patch grids, input sizes, crop boxes (``grid_layout``, ``pair``, ``pixels``, ``view_box``)
* ``readout``   — how a model's output reads the last block's tokens (the pooling and its weights)
* ``mixing``    — token mixing as row vectors: dense attention, shifted windows, patch merging
* ``attention`` — head fusion, E_h[(∇A ⊙ A)⁺], rollout as a matrix product
* ``chunked``   — dense attention as blocks of rows (in memory, or recomputed from q, k): rollout, relevance
  and per-head rows for one image, a batch, and the chunked high-resolution path
* ``budget``    — what an input size costs (time, memory) before running it, and the largest that fits
"""
