"""One ONNX graph from the three: `end_to_end.onnx` = image_encoder + text_encoder + head, composed with onnx.compose.

    pixels uint8 (N, S, S, 3), input_ids, attention_mask int64 (N, L), has_text, has_image bool (N)
      -> logits, probs, text_probs, image_probs (N, C), text_weight, image_weight (N), text_emb (N, Dt), image_emb (N, Dv)

For runtimes other than ctmwa-batch that want a single file. Rows without an image still need pixels (zeros do)
and rows without a text still need tokens (BOS + EOS do): the head ignores the embeddings of absent modalities.
It is validated like every export (ctmwa_export.spec), against running the three bundle graphs in sequence. The file
repeats the encoders' weights, so it roughly doubles the bundle: `ctmwa-export head --end-to-end` makes it on request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx.compose
import torch

from ctmwa_batch.model.bundle import ATTENTION_MASK, IMAGE_ENCODER, INPUT_IDS, PIXELS, TEXT_ENCODER, TOKENIZER, Bundle
from ctmwa_batch.model.preprocess import TextTokenizer
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_batch.schema import HAS_IMAGE, HAS_TEXT, IMAGE_EMB, TEXT_EMB
from ctmwa_export.encoders import PARITY_TEXTS
from ctmwa_export.head import HEAD_OUTPUTS, MASK_CASES, head_inputs
from ctmwa_export.spec import ExportSpec, ValidationReport, validate_onnx

logger = logging.getLogger(__name__)

END_TO_END_INPUTS = (PIXELS, INPUT_IDS, ATTENTION_MASK, HAS_TEXT, HAS_IMAGE)
END_TO_END_OUTPUTS = (*HEAD_OUTPUTS, TEXT_EMB, IMAGE_EMB)


def compose(image_encoder: Path, text_encoder: Path, head: Path) -> onnx.ModelProto:
    """The three graphs as one model; every internal name is prefixed by its graph's, the interface names are kept."""
    graphs = {}
    for prefix, path in (("image_encoder/", image_encoder), ("text_encoder/", text_encoder), ("head/", head)):
        graphs[prefix] = onnx.compose.add_prefix(
            onnx.load(str(path)), prefix, rename_inputs=False, rename_outputs=False
        )
    opsets = {prefix: {o.domain: o.version for o in m.opset_import} for prefix, m in graphs.items()}
    if len({tuple(sorted(o.items())) for o in opsets.values()}) != 1:
        raise ValueError(f"the graphs use different opsets {opsets}; export them all with the same --opset")
    encoders = onnx.compose.merge_models(graphs["image_encoder/"], graphs["text_encoder/"], io_map=[], name="encoders")
    model = onnx.compose.merge_models(
        encoders,
        graphs["head/"],
        io_map=[(TEXT_EMB, TEXT_EMB), (IMAGE_EMB, IMAGE_EMB)],
        outputs=list(END_TO_END_OUTPUTS),
        name="ctmwa_end_to_end",
        producer_name="ctmwa-export head --end-to-end",
    )
    # merge_models keeps graph inputs in graph order (pixels, input_ids, attention_mask, then the head's masks) but
    # lists the encoders' outputs first; put the head's first, as the spec (and DESIGN.md) order them.
    names = tuple(i.name for i in model.graph.input)
    assert names == END_TO_END_INPUTS, names
    outputs = {o.name: onnx.ValueInfoProto() for o in model.graph.output}
    for o in model.graph.output:
        outputs[o.name].CopyFrom(o)
    del model.graph.output[:]
    model.graph.output.extend(outputs[name] for name in END_TO_END_OUTPUTS)
    return model


class SequentialGraphs(torch.nn.Module):
    """The reference: the bundle's three graphs run one after the other through onnxruntime, as the scorer does."""

    def __init__(self, image_encoder: Path, text_encoder: Path, head: Path):
        super().__init__()
        config = RuntimeConfig(device="cpu")
        self.image = create_session(image_encoder, config)
        self.text = create_session(text_encoder, config)
        self.head = create_session(head, config)

    def forward(self, pixels, input_ids, attention_mask, has_text, has_image) -> dict[str, torch.Tensor]:
        image_emb = self.image.run({PIXELS: pixels.numpy()})[IMAGE_EMB]
        text_emb = self.text.run({INPUT_IDS: input_ids.numpy(), ATTENTION_MASK: attention_mask.numpy()})[TEXT_EMB]
        out = self.head.run(
            {TEXT_EMB: text_emb, IMAGE_EMB: image_emb, HAS_TEXT: has_text.numpy(), HAS_IMAGE: has_image.numpy()}
        )
        return {
            **{k: torch.from_numpy(v) for k, v in out.items()},
            TEXT_EMB: torch.from_numpy(text_emb),
            IMAGE_EMB: torch.from_numpy(image_emb),
        }


def end_to_end_spec(bundle: Bundle, num_classes: int, extra_batch_sizes: tuple[int, ...] = ()) -> ExportSpec:
    """ExportSpec of end_to_end.onnx: random images, texts tokenized by the runtime's own tokenizer, every mask case."""
    image_size = bundle.image_spec.size
    tokenizer = TextTokenizer(bundle.path(TOKENIZER), bundle.text_spec)
    dims = bundle.dims

    def make_inputs(batch_size: int, case: str = "mixed") -> dict[str, np.ndarray]:
        rng = np.random.default_rng([batch_size, list(MASK_CASES).index(case), 17])
        texts = [" ".join(rng.choice(PARITY_TEXTS, size=int(rng.integers(1, 3)))) for _ in range(batch_size)]
        tokens = tokenizer.encode(texts)
        masks = head_inputs(batch_size, case, text_dim=dims[TEXT_EMB], image_dim=dims[IMAGE_EMB])
        return {
            PIXELS: rng.integers(0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8),
            INPUT_IDS: tokens.input_ids,
            ATTENTION_MASK: tokens.attention_mask,
            HAS_TEXT: masks[HAS_TEXT],
            HAS_IMAGE: masks[HAS_IMAGE],
        }

    batch = {0: "batch"}
    return ExportSpec(
        name="end_to_end",
        input_names=END_TO_END_INPUTS,
        output_names=END_TO_END_OUTPUTS,
        dynamic_axes={
            **{name: batch for name in (PIXELS, HAS_TEXT, HAS_IMAGE, *END_TO_END_OUTPUTS)},
            INPUT_IDS: {0: "batch", 1: "sequence"},
            ATTENTION_MASK: {0: "batch", 1: "sequence"},
        },
        make_inputs=make_inputs,
        output_shapes={
            **{name: ("batch", num_classes) for name in HEAD_OUTPUTS[:4]},
            **{name: ("batch",) for name in HEAD_OUTPUTS[4:]},
            TEXT_EMB: ("batch", dims[TEXT_EMB]),
            IMAGE_EMB: ("batch", dims[IMAGE_EMB]),
        },
        atol=1e-5,  # the same kernels on the same inputs: only graph-level fusions may differ
        extra_batch_sizes=extra_batch_sizes,
        input_cases=tuple(MASK_CASES),
    )


def write_end_to_end(encoders: Bundle, head: Path, out_path: Path, num_classes: int) -> ValidationReport:
    """Compose encoders + head into out_path and validate it against the three graphs in sequence.

    On failure out_path is removed and ExportValidationError raised.
    """
    image_encoder, text_encoder = encoders.path(IMAGE_ENCODER), encoders.path(TEXT_ENCODER)
    model = compose(image_encoder, text_encoder, head)
    onnx.save(model, str(out_path))
    try:
        return validate_onnx(
            end_to_end_spec(encoders, num_classes), out_path, SequentialGraphs(image_encoder, text_encoder, head)
        )
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
