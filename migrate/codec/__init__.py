"""The binary codec every xmig message and recorded event goes through (``wire``), and the
one table of stable type names it writes into frames (``names``)."""
