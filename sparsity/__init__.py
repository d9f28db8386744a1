"""Structured sparsity (issue 17): pruning masks (2:4, blocks, unstructured; magnitude or Wanda scores), the
compressed formats the project's sparse kernels read (BSR, 2:4 values + 2-bit indices), whole-model pruning
with calibration, and recovery fine-tuning with the masks kept. docs/sparsity.md has the details.

    masks.py    Pattern, mask_for (2:4 / block / unstructured; magnitude / wanda)
    formats.py  bsr_pack / bsr_unpack, pack_24 / unpack_24, byte counts
    prune.py    calibrate (Wanda activation norms), prune_model, apply_masks, weight_bytes
    recover.py  finetune (masks kept after every step)
"""
