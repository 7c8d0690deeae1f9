"""kubeca client: a thin, typed gRPC client and the tools bootstrap scripts need."""
