"""A BERT-style encoder split at a layer: the lower blocks, then the upper ones.

BTR stores the cut-layer states of passages as binary codes and runs the upper blocks on their
reconstruction; the multi-sense student runs only the lower blocks. Works on ``BertModel``-like
encoders (``embeddings`` + ``encoder.layer``).
"""

from __future__ import annotations


def _mask4d(model, hidden, attention_mask):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=attention_mask
    )


def lower_states(model, input_ids, attention_mask, cut: int, token_type_ids=None):
    """Embeddings + blocks ``0..cut-1`` of a BertModel: the states BTR binarises."""
    h = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    mask = _mask4d(model, h, attention_mask)
    for layer in model.encoder.layer[:cut]:
        h = layer(h, mask)
    return h


def upper_states(model, hidden, attention_mask, cut: int):
    """Blocks ``cut..L-1`` on (reconstructed) states, with the passage's own attention mask."""
    mask = _mask4d(model, hidden, attention_mask)
    for layer in model.encoder.layer[cut:]:
        hidden = layer(hidden, mask)
    return hidden
