"""The widget layer: binary wire format, bundle lookup, the Inspector and standalone export."""
