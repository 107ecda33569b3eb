"""Stage one's data path: discover videos, decode, cut clips, preprocess, run, record."""
