"""Images for pods: references checked, pulls deduplicated and limited, registry credentials."""
