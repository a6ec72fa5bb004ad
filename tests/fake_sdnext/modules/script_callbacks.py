callbacks_ui_tabs = []
callbacks_app_started = []
callbacks_ui_settings = []


def on_ui_tabs(fn):
    callbacks_ui_tabs.append(fn)


def on_app_started(fn):
    callbacks_app_started.append(fn)


def on_ui_settings(fn):
    callbacks_ui_settings.append(fn)
