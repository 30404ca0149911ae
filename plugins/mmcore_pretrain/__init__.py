"""Built-in plugin package: pre-training tasks (MLM, MRFR, MOC, ITM, ITM_HS, IFRS, TITP, TITS)."""
