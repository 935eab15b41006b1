import ast


def parse(expr):
    return ast.literal_eval(expr)
