import os

data_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
