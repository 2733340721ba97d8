"""Names of T5's layers that flags refer to, importable before torch is loaded (the training CLI
refuses bad input before it pays for importing torch and transformers)."""

# The linear projections LoRA wraps by default: T5's attention (q k v o) and feed-forward (wi for
# T5 v1.0, wi_0 / wi_1 gated for FLAN-T5 and T5 v1.1, wo); those a model has are used.
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
