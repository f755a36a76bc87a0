class App:
    def stream(self, message):
        yield message

app = App()
