def run_pip(command, desc=None):
    raise AssertionError("launch.run_pip is not used")
