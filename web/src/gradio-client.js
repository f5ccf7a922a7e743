// The Gradio JavaScript client as one ES module, served beside the page (/web/gradio-client.js): the page imports
// it, and a page of your own can too (`import { Client } from "http://HOST:PORT/web/gradio-client.js"`), as the
// original one-image page imported it from a CDN. Nothing is fetched from a CDN at run time.
export { Client, client, handle_file } from "@gradio/client";
