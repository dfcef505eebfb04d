"""The B-mode simulator: labelled ultrasound datasets with known ground truth, for tests, the demo and probes.

- `phantom`: probes and tissue phantoms (geometry, echogenicity, lesions, labels).
- `bmode`: convolution-model B-mode physics and scan conversion (image + fan mask).
- `dressing`: scanner overlays (text, depth ruler, calipers, ECG) that preprocessing must remove.
- `simulate`: whole datasets on disk (`usjepa simulate`, and `data.source=simulate`).

Nothing is imported here, so `import usjepa.data.sim.phantom` (read when a config loads) stays light.
"""
