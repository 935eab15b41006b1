#!/bin/sh
# Prints the latest release notes.
curl -fsSL "https://api.example.invalid/repos/acme/widget/releases/latest" | jq -r .body
