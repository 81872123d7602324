"""Solar flares from sunspot regions, learnt online: a 3-class MLP on mixed-type records."""

import torch
from torch import nn

import streaminfer as si

features = si.Features(
    si.categorical("zurich_class", list("ABCDEFH")),
    si.categorical("largest_spot_size", list("AHKRSX")),
    si.categorical("spot_distribution", list("CIOX")),
    si.numeric("activity", "evolution", "previous_activity"),
    si.boolean("hist_complex", "hist_complex_this_pass"),
    si.numeric("area", "largest_spot_area", fill=1.0),  # optional fields: null -> 1
)


class FlareMLP(nn.Module):
    """Two layers: region features -> logits of no flare / C class / M or X class."""

    def __init__(self, inputs: int = features.width, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


app = si.App(
    "flares",
    input=si.Input("flares", schema="flare.avsc", key="region"),
    features=features,
    model=lambda settings: FlareMLP(),  # built per worker, seeded by --seed
    outputs=si.Outputs(["p_none", "p_c", "p_mx"], activation="softmax"),
    learning=si.Learning(topic="flare-labels", schema="flare_label.avsc",
                         label="flare_class", loss="ce", lr=0.01, batch_size=16),
)
