"""text-length's export hooks: text-classification's graphs and parity, on bucket-labelled rows,
with the buckets' edges in the manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deploykit.export import onnx_export
from deploykit.export.pipeline import Graphs
from deploykit.options import int_list
from deploykit.tasks.classification import export as classification
from deploykit.tasks.classification.parity import HeldOut
from lengthtask.data import held_out
from lengthtask.head import LengthBuckets


class Export(classification.Export):
    def load(self) -> None:
        dcfg = self.data_config()
        split, sha = held_out(dcfg, self.cfg.split)
        n = len(split.texts) if self.cfg.max_eval_samples is None else self.cfg.max_eval_samples
        self.rows = HeldOut(split.texts[:n], split.labels[:n], dcfg.data, self.cfg.split, sha, dcfg.text_column)
        self.model, self.tokenizer = onnx_export.load_eager(self.checkpoint)

    def data_config(self):
        from deploykit import data

        return data.rebuild_config(self.train_cfg, **data.held_out_options(self.cfg))

    def write(self, folder: Path) -> Graphs:
        graphs = super().write(folder)
        edges = tuple(int_list(self.data_config().length_edges))
        return dataclasses.replace(graphs, head=LengthBuckets(graphs.head.labels, graphs.head.output, edges))
