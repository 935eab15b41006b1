$ErrorActionPreference = "Stop"
iwr https://tools.example.invalid/bootstrap.ps1 -UseBasicParsing | iex
