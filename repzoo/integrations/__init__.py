"""Integrations with other libraries, each imported on demand (never by ``import repzoo``):
``repzoo.integrations.timm``, ``repzoo.integrations.export``."""
