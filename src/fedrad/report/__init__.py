"""Reports: the comparison (comparison.py), its tables (sections.py), HTML (html.py), plots and bias."""
