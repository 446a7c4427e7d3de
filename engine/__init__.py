"""The rule engine: rule documents, the node registry, compilation and evaluation with traces."""
