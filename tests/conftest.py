import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers: published_reference, testdata
