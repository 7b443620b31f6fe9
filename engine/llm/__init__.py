"""Everything that talks to OpenAI-compatible backends lives in this package."""
