"""The sections of the settings schema, one module per theme; ``chef_genius/settings/schema.py`` joins them."""
