"""Plotly figures shared by the forms (client module)."""

import plotly.graph_objects as go


def probability_bars(result):
    """(data, layout) of a bar chart of every class probability of one prediction."""
    classes = result.get("classes") or [{"key": k, "display_name": k} for k in result["probabilities"]]
    names = [c["display_name"] for c in classes]
    values = [result["probabilities"].get(c["key"], 0.0) for c in classes]
    colours = ["#2a7ab0" if c["key"] == result["predicted_class"] else "#9fbfd6" for c in classes]
    data = [go.Bar(x=names, y=values, marker={"color": colours})]
    layout = {"yaxis": {"range": [0, 1], "title": "probability"}, "margin": {"l": 50, "r": 10, "t": 10, "b": 80},
              "height": 220}
    return data, layout


def share_bars(conditions):
    """(data, layout) of condition shares with their 95% intervals as asymmetric error bars."""
    names = [c["display_name"] for c in conditions]
    shares = [c["share"] for c in conditions]
    data = [go.Bar(
        x=names, y=shares,
        error_y={"type": "data", "symmetric": False,
                 "array": [c["high"] - c["share"] for c in conditions],
                 "arrayminus": [c["share"] - c["low"] for c in conditions]},
        marker={"color": "#2a7ab0"})]
    layout = {"yaxis": {"range": [0, 1], "title": "share of cells (95% interval)"},
              "margin": {"l": 60, "r": 10, "t": 10, "b": 80}, "height": 300}
    return data, layout


def percent(value):
    return "%.1f%%" % (100.0 * value)
