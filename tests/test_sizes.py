"""Input sizes refused by memory, not by a fixed patch count (``tokens/budget.py``, ``ModelAdapter.check_size``).

Swin's window attention has no T×T: an input above the old 4,096-patch cap runs, and its map is the one
a dense matrix product gives (the test builds it from the window attentions the model itself returned).
A size whose estimate does not fit the memory available is refused in one sentence naming a size that fits,
and that size is accepted.
"""
import numpy as np
import pytest
import torch

import attnviz.tokens.budget as budget
from attnviz.adapters.classifier import ClassifierAdapter
from attnviz.adapters.swin import SwinAdapter
from attnviz.errors import UsageError
from attnviz.methods.registry import explain


def test_swin_runs_above_the_old_patch_cap(photo):
    ad = SwinAdapter.tiny()                                # patch 2, window 3: 130² -> 65×65 = 4,225 patches
    inputs = ad.prepare(photo, size=(130, 130))
    assert ad.layout(inputs).n_patches == 65 * 65 > 4096
    cap = ad.capture(inputs, grads=False)
    h = cap.extras["hierarchy"]
    # rollout by matrices: each block's window attention scattered into a dense [N, N] (heads averaged)
    v = cap.readout.double()
    for li in range(len(h.blocks) - 1, -1, -1):
        win, a = h.blocks[li], cap.extras["windows"][li].mean(1).double()          # [nW, S, S]
        n = win.n_tokens
        m = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        idx = win.slots.clone()
        idx[idx < 0] = n                                                             # padding -> a dropped column
        m[idx[:, :, None], idx[:, None, :]] = a
        m = m[:n, :n]
        m = 0.5 * m + 0.5 * torch.eye(n, dtype=torch.float64)
        v = v @ (m / m.sum(-1, keepdim=True))
        if li > 0 and h.blocks[li - 1].stage != win.stage:
            v = h.merge(h.blocks[li - 1].stage).pull(v)
    got = explain(ad, cap, "rollout").map
    ref = v.reshape(65, 65).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("make", [lambda: SwinAdapter.tiny(), lambda: ClassifierAdapter.tiny("dinov2")])
def test_a_size_that_does_not_fit_is_refused_with_one_that_does(make, photo, monkeypatch):
    ad = make()
    monkeypatch.setattr(budget, "available_memory", lambda: 256 << 20)            # 256 MB "available"
    with pytest.raises(UsageError, match=r"GB are available here: at most about (\d+)×\1 fits") as err:
        ad.prepare(photo, size=(4000, 4000))
    side = int(str(err.value).rsplit("about ", 1)[1].split("×")[0])
    assert side % ad.patch_size[0] == 0 and side < 4000
    assert ad.estimate((side, side)).relevance_bytes <= 0.8 * (256 << 20)          # the arithmetic of the doc:
    assert ad.estimate((side + ad.patch_size[0],) * 2).relevance_bytes > 0.8 * (256 << 20)
    ad.check_size((side, side))                                                     # ... and it is accepted

