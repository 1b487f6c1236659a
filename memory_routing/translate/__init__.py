"""Stage 3b, translation between API formats with LiteLLM's own transformations, for calls whose
provider has no endpoint in the client's format. Imports LiteLLM; never mitmproxy."""
