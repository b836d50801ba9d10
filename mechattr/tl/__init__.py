"""Everything that knows TransformerLens: the model adapter, loading, the SmolLM2 loader and the
hook-free fast path. The rest of mechattr reaches TransformerLens only through this package."""
