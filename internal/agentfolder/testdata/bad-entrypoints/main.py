def run(m):
    return m

def run2(m):
    return m
