"""Dashboards: sae_dashboard's feature-centric page plus our panels (DFA by source
position, head attribution, logit lens, detector verdicts), as one offline HTML file.

Panels follow the protocol in `sae_lens_attn.dashboard.panels`.
"""
