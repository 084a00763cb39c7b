"""optin-deploy: one-shot OPTIN pruning, physical removal, export and on-target validation."""

__version__ = "0.1.0"
