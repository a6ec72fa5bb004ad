"""SD.Next's settings (modules/options.py OptionInfo, modules/options_handler.py Options), reduced: the same
constructor signature, `add_option`, and attribute access that answers a stored value, else the default."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, folder=False, submit=None, comment_before="", comment_after="", category_id=None,
                 *args, **kwargs):  # fmt: skip
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.folder = folder


class Options:
    def __init__(self, templates):
        super().__setattr__("data_labels", dict(templates))
        super().__setattr__("data", {key: info.default for key, info in templates.items()})

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def __setattr__(self, key, value):
        if key in self.data_labels or key in self.data:
            self.data[key] = value
            return
        super().__setattr__(key, value)

    def set(self, key, value):
        self.data[key] = value
        return True

    def add_option(self, key, info):
        self.data_labels[key] = info
