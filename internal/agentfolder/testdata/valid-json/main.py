def run(message):
    return {"answer": message}
