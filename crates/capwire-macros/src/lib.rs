//! `#[capwire::interface]`: a trait becomes a typed capwire interface.
//!
//! Use it through the `capwire` crate, which re-exports it and documents it
//! with a runnable tutorial. For a trait `Calc` the attribute generates:
//!
//! - the trait itself, with each `async fn` turned into a method returning a
//!   `Send` future (so an implementation can use `async fn`);
//! - `CalcClient`: a typed handle whose methods return typed promises (and
//!   typed streams), serializable inside other values as a capability;
//! - `CalcServer<T>`: the adapter that serves any `T: Calc`, the only way to
//!   serve the interface, so every method has a handler;
//! - the interface's JSON Schema (every method's parameters and result).
//!
//! ```ignore
//! #[capwire::interface(name = "calc", version = "1.0")]
//! pub trait Calc {
//!     async fn square(&self, n: i64) -> Result<i64, capwire::Status>;
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, Ident, ItemTrait, LitInt, LitStr, Pat,
    PathArguments, ReturnType, TraitItem, Type,
};

/// Makes a trait a capwire interface. See the `capwire` crate for the guide.
///
/// Attribute arguments: `version = "…"` (required), `name = "…"` (the name
/// it is served under; the trait's name by default). Method attributes, as
/// `#[capwire(…)]`: `idempotent`, `stream` (the method returns
/// `Result<capwire::typed::ItemsOf<T>, Status>`), `item = "…"` (a stream's
/// items as JSON-RPC notifications of that method), `notification` (sent
/// without an answer; returns `Result<(), Status>`), `timeout_ms = N` (the
/// client's default deadline), `name = "…"` (the wire name; by default the
/// method's name in camelCase).
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut args = InterfaceArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            args.name = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("version") {
            args.version = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown capwire interface argument: expected `name` or `version`"))
        }
    });
    parse_macro_input!(attr with parser);
    let item = parse_macro_input!(item as ItemTrait);
    match expand(args, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct InterfaceArgs {
    name: Option<LitStr>,
    version: Option<LitStr>,
}

struct Param {
    name: Ident,
    ty: Type,
}

struct Method {
    ident: Ident,
    wire: String,
    params: Vec<Param>,
    /// The `T` of `Result<T, Status>` (for streams, of `ItemsOf<T>`).
    output: Type,
    stream: bool,
    /// Sent without waiting for an answer (a JSON-RPC notification).
    notification: bool,
    /// Stream methods: the JSON-RPC method of the notifications that carry
    /// its items (the method's own wire name by default).
    item: Option<String>,
    idempotent: bool,
    timeout_ms: Option<u64>,
    attrs: Vec<syn::Attribute>,
}

fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for (i, c) in name.chars().enumerate() {
        if c == '_' && i > 0 {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `Result<T, Status>` → `T`.
fn result_ok_type(ret: &ReturnType, span: Span) -> syn::Result<Type> {
    let wrong = || {
        syn::Error::new(
            span,
            "a capwire method returns `Result<T, capwire::Status>`: calls over a connection can fail",
        )
    };
    let ReturnType::Type(_, ty) = ret else {
        return Err(wrong());
    };
    let Type::Path(path) = &**ty else {
        return Err(wrong());
    };
    let last = path.path.segments.last().ok_or_else(wrong)?;
    if last.ident != "Result" {
        return Err(wrong());
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(wrong());
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let (Some(ok), Some(Type::Path(err)), None) = (types.next(), types.next(), types.next()) else {
        return Err(wrong());
    };
    if !matches!(err.path.segments.last(), Some(s) if s.ident == "Status") {
        return Err(syn::Error::new(
            err.span(),
            "the error type of a capwire method is `capwire::Status`",
        ));
    }
    Ok(ok.clone())
}

/// `ItemsOf<T>` → `T`.
fn stream_item_type(ty: &Type) -> syn::Result<Type> {
    let wrong = || {
        syn::Error::new(
            ty.span(),
            "a `#[capwire(stream)]` method returns `Result<capwire::typed::ItemsOf<T>, capwire::Status>`",
        )
    };
    let Type::Path(path) = ty else {
        return Err(wrong());
    };
    let last = path.path.segments.last().ok_or_else(wrong)?;
    if last.ident != "ItemsOf" {
        return Err(wrong());
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(wrong());
    };
    match args.args.first() {
        Some(GenericArgument::Type(t)) if args.args.len() == 1 => Ok(t.clone()),
        _ => Err(wrong()),
    }
}

fn parse_method(f: &mut syn::TraitItemFn) -> syn::Result<Method> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "capwire interface methods are `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a capwire method cannot be generic: its types must be known on the wire",
        ));
    }
    if let Some(body) = &f.default {
        return Err(syn::Error::new(
            body.span(),
            "capwire interface methods have no default body: the server implements every method",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new(
                r.span(),
                "capwire methods take `&self`: one object answers many callers at once (use interior mutability)",
            ))
        }
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "capwire methods take `&self` first",
            ))
        }
    }
    let mut params = Vec::new();
    for arg in inputs {
        let FnArg::Typed(pt) = arg else {
            return Err(syn::Error::new(arg.span(), "unexpected receiver"));
        };
        let Pat::Ident(pat) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "capwire method parameters are plain names (`name: Type`)",
            ));
        };
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "capwire method parameters are owned values: they arrive over the wire",
            ));
        }
        params.push(Param {
            name: pat.ident.clone(),
            ty: (*pt.ty).clone(),
        });
    }
    let mut stream = false;
    let mut notification = false;
    let mut item = None;
    let mut idempotent = false;
    let mut timeout_ms = None;
    let mut wire = camel_case(&sig.ident.to_string());
    let mut attrs = Vec::new();
    for attr in f.attrs.drain(..) {
        if !attr.path().is_ident("capwire") {
            attrs.push(attr);
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("stream") {
                stream = true;
            } else if meta.path.is_ident("notification") {
                notification = true;
            } else if meta.path.is_ident("item") {
                let lit: LitStr = meta.value()?.parse()?;
                item = Some(lit.value());
            } else if meta.path.is_ident("idempotent") {
                idempotent = true;
            } else if meta.path.is_ident("timeout_ms") {
                let lit: LitInt = meta.value()?.parse()?;
                timeout_ms = Some(lit.base10_parse()?);
            } else if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                wire = lit.value();
            } else {
                return Err(meta.error(
                    "unknown capwire method attribute: expected `stream`, `notification`, `item = \"…\"`, `idempotent`, `timeout_ms = N` or `name = \"…\"`",
                ));
            }
            Ok(())
        })?;
    }
    f.attrs = attrs.clone();
    let ok = result_ok_type(&sig.output, sig.ident.span())?;
    if notification && stream {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a method is a `stream` or a `notification`, not both",
        ));
    }
    if item.is_some() && !stream {
        return Err(syn::Error::new(
            sig.ident.span(),
            "`item = \"…\"` names the notifications of a stream method's items: add `stream`",
        ));
    }
    if notification && !matches!(&ok, Type::Tuple(t) if t.elems.is_empty()) {
        return Err(syn::Error::new(
            sig.output.span(),
            "a notification has no answer: it returns `Result<(), Status>`",
        ));
    }
    let output = if stream { stream_item_type(&ok)? } else { ok };
    Ok(Method {
        ident: sig.ident.clone(),
        wire,
        params,
        output,
        stream,
        notification,
        item,
        idempotent,
        timeout_ms,
        attrs,
    })
}

fn expand(args: InterfaceArgs, mut item: ItemTrait) -> syn::Result<Tokens> {
    let Some(version) = args.version else {
        return Err(syn::Error::new(
            Span::call_site(),
            "a capwire interface needs a version: #[capwire::interface(version = \"1.0\")]",
        ));
    };
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a capwire interface cannot be generic",
        ));
    }
    let trait_ident = item.ident.clone();
    let name = args
        .name
        .unwrap_or_else(|| LitStr::new(&trait_ident.to_string(), trait_ident.span()));
    let vis = item.vis.clone();
    let client = format_ident!("{}Client", trait_ident);
    let server = format_ident!("{}Server", trait_ident);
    let interface_str = trait_ident.to_string();

    let mut methods = Vec::new();
    for it in &mut item.items {
        match it {
            TraitItem::Fn(f) => methods.push(parse_method(f)?),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a capwire interface holds only methods",
                ))
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for m in &methods {
        if !seen.insert(m.wire.clone()) {
            return Err(syn::Error::new(
                m.ident.span(),
                format!("two methods are called `{}` on the wire", m.wire),
            ));
        }
    }

    // The trait: `async fn` becomes a method returning a `Send` future.
    for it in &mut item.items {
        if let TraitItem::Fn(f) = it {
            let ret = match &f.sig.output {
                ReturnType::Type(_, t) => (**t).clone(),
                ReturnType::Default => unreachable!("checked by parse_method"),
            };
            f.sig.asyncness = None;
            f.sig.output = syn::parse_quote! {
                -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send
            };
        }
    }
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits.push(syn::parse_quote!('static));

    let p = quote!(::capwire::__private);
    let mut client_methods = Vec::new();
    let mut call_arms = Vec::new();
    let mut stream_arms = Vec::new();
    let mut describe = Vec::new();
    let mut checks = Vec::new();
    let mut idempotent = Vec::new();
    for m in &methods {
        let ident = &m.ident;
        let wire = &m.wire;
        let names: Vec<&Ident> = m.params.iter().map(|p| &p.name).collect();
        let types: Vec<&Type> = m.params.iter().map(|p| &p.ty).collect();
        let output = &m.output;
        let mut attrs = m.attrs.clone();
        if !attrs.iter().any(|a| a.path().is_ident("doc")) {
            let doc = format!("Calls `{wire}`.");
            attrs.push(syn::parse_quote!(#[doc = #doc]));
        }
        let attrs = &attrs;
        for ty in types.iter().copied().chain(std::iter::once(output)) {
            checks.push(quote_spanned! {ty.span()=>
                ::capwire::__private::assert_wire::<#ty>();
            });
        }
        let options = match m.timeout_ms {
            Some(ms) => {
                quote!(::capwire::CallOptions::timeout(::core::time::Duration::from_millis(#ms)))
            }
            None => quote!(::capwire::CallOptions::default()),
        };
        let stream_options = match m.timeout_ms {
            Some(ms) => {
                quote!(::capwire::StreamOptions::default().timeout(::core::time::Duration::from_millis(#ms)))
            }
            None => quote!(::capwire::StreamOptions::default()),
        };
        // Arguments travel as a positional array; no parameters is `[]`.
        let args_value = if names.is_empty() {
            quote!(::capwire::Value::from_typed(&[(); 0]))
        } else {
            quote!(::capwire::Value::from_typed(&(#(#names,)*)))
        };
        let decode_args = if names.is_empty() {
            quote!(let _ = args;)
        } else {
            quote!(let (#(#names,)*): (#(#types,)*) = args
                .to_typed()
                .map_err(|s| ::capwire::__private::bad_arguments(#wire, &[#(::core::stringify!(#names)),*], s))?;)
        };
        if m.stream {
            client_methods.push(quote! {
                #(#attrs)*
                pub fn #ident(&self, #(#names: #types),*) -> ::capwire::typed::TypedStream<#output> {
                    ::capwire::typed::TypedStream::call(&self.cap, #wire, #args_value, #stream_options)
                }
            });
            stream_arms.push(quote! {
                #wire => {
                    let imp = self.0.clone();
                    ::std::boxed::Box::pin(::capwire::__private::with_context(ctx, async move {
                        #decode_args
                        let items = imp.#ident(#(#names),*).await?;
                        ::core::result::Result::Ok(::capwire::__private::encode_items(items))
                    }))
                }
            });
            call_arms.push(quote! {
                #wire => ::std::boxed::Box::pin(async move {
                    ::core::result::Result::Err(::capwire::Status::new(
                        ::capwire::Code::InvalidArgument,
                        ::std::format!("`{}` of {} is a stream method: call it as a stream", #wire, #interface_str),
                    ))
                }),
            });
        } else if m.notification {
            client_methods.push(quote! {
                #(#attrs)*
                ///
                /// A notification: sent without waiting for an answer (it fails
                /// only if the arguments cannot be encoded or the connection is gone).
                pub fn #ident(&self, #(#names: #types),*) -> ::core::result::Result<(), ::capwire::Status> {
                    self.cap.notify(#wire, #args_value?)
                }
            });
            call_arms.push(quote! {
                #wire => {
                    let imp = self.0.clone();
                    ::std::boxed::Box::pin(::capwire::__private::with_context(ctx, async move {
                        #decode_args
                        imp.#ident(#(#names),*).await?;
                        ::capwire::Value::from_typed(&())
                    }))
                }
            });
        } else {
            client_methods.push(quote! {
                #(#attrs)*
                pub fn #ident(&self, #(#names: #types),*) -> ::capwire::typed::TypedPromise<#output> {
                    ::capwire::typed::TypedPromise::call(&self.cap, #wire, #args_value, #options)
                }
            });
            call_arms.push(quote! {
                #wire => {
                    let imp = self.0.clone();
                    ::std::boxed::Box::pin(::capwire::__private::with_context(ctx, async move {
                        #decode_args
                        let result = imp.#ident(#(#names),*).await?;
                        ::capwire::Value::from_typed(&result)
                    }))
                }
            });
        }
        if m.idempotent {
            idempotent.push(wire.clone());
        }
        let kind = if m.stream {
            "stream"
        } else if m.notification {
            "notification"
        } else {
            "call"
        };
        let item = match &m.item {
            Some(item) => quote!(#p::serde_json::json!(#item)),
            None => quote!(#p::serde_json::Value::Null),
        };
        let is_idem = m.idempotent;
        let timeout = match m.timeout_ms {
            Some(ms) => quote!(#p::serde_json::json!(#ms)),
            None => quote!(#p::serde_json::Value::Null),
        };
        let param_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        describe.push(quote! {
            let params: ::std::vec::Vec<#p::serde_json::Value> = ::std::vec![#(
                #p::serde_json::json!({
                    "name": #param_names,
                    "schema": generator.subschema_for::<#types>(),
                })
            ),*];
            methods.insert(#wire.to_owned(), #p::serde_json::json!({
                "kind": #kind,
                "params": params,
                "result": generator.subschema_for::<#output>(),
                "idempotent": #is_idem,
                "timeout_ms": #timeout,
                "item": #item,
            }));
        });
    }
    let client_doc = format!(
        "A typed handle to a `{interface_str}` capability (local or remote). \
         Its methods return promises; it travels inside values as a capability."
    );
    let server_doc = format!(
        "Serves any implementation of [`{interface_str}`]: `registry.serve_interface({server}::new(imp))`."
    );
    let streams: Vec<&String> = methods
        .iter()
        .filter(|m| m.stream)
        .map(|m| &m.wire)
        .collect();
    let stream_check = if streams.is_empty() {
        quote!(false)
    } else {
        quote!(::core::matches!(method, #(#streams)|*))
    };
    let idem_arms = if idempotent.is_empty() {
        quote!(false)
    } else {
        quote!(::core::matches!(method, #(#idempotent)|*))
    };

    Ok(quote! {
        // First, so that a type that cannot travel is reported as such.
        const _: () = {
            #[allow(dead_code)]
            fn check_wire_types() {
                #(#checks)*
            }
        };

        #item

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client {
            cap: ::capwire::Capability,
        }

        impl #client {
            #(#client_methods)*

            /// Bootstraps this interface from `session`, at its declared version.
            pub async fn bootstrap(session: &::capwire::Session) -> ::core::result::Result<Self, ::capwire::Status> {
                ::capwire::typed::bootstrap(session, #name, #version).await
            }

            /// A handle to an implementation in this process, to return or pass
            /// as a capability.
            pub fn from_impl<T: #trait_ident>(imp: T) -> Self {
                Self { cap: ::capwire::typed::local(#server::new(imp)) }
            }
        }

        impl ::capwire::typed::Client for #client {
            const INTERFACE: &'static str = #interface_str;

            fn from_cap(cap: ::capwire::Capability) -> Self {
                Self { cap }
            }

            fn cap(&self) -> &::capwire::Capability {
                &self.cap
            }

            fn describe(generator: &mut ::capwire::schemars::SchemaGenerator) -> #p::serde_json::Value {
                let mut methods = #p::serde_json::Map::new();
                #(#describe)*
                #p::serde_json::Value::Object(methods)
            }
        }

        impl #p::serde::Serialize for #client {
            fn serialize<S: #p::serde::Serializer>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error> {
                ::capwire::__private::serialize_cap(&self.cap, serializer)
            }
        }

        impl<'de> #p::serde::Deserialize<'de> for #client {
            fn deserialize<D: #p::serde::Deserializer<'de>>(deserializer: D) -> ::core::result::Result<Self, D::Error> {
                ::capwire::__private::deserialize_cap(deserializer).map(|cap| Self { cap })
            }
        }

        impl ::capwire::schemars::JsonSchema for #client {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(#interface_str)
            }

            fn json_schema(generator: &mut ::capwire::schemars::SchemaGenerator) -> ::capwire::schemars::Schema {
                let methods = <Self as ::capwire::typed::Client>::describe(generator);
                ::capwire::__private::cap_schema(#interface_str, methods)
            }
        }

        #[doc = #server_doc]
        #vis struct #server<T>(::std::sync::Arc<T>);

        impl<T: #trait_ident> #server<T> {
            /// Wraps an implementation to serve it.
            pub fn new(imp: T) -> Self {
                Self(::std::sync::Arc::new(imp))
            }
        }

        impl<T> ::capwire::typed::Interface for #server<T> {
            const NAME: &'static str = #name;
            const VERSION: &'static str = #version;
        }

        impl<T: #trait_ident> ::capwire::Object for #server<T> {
            fn call(
                self: ::std::sync::Arc<Self>,
                method: &str,
                args: ::capwire::Value,
                ctx: ::capwire::CallContext,
            ) -> #p::BoxFuture<'static, ::core::result::Result<::capwire::Value, ::capwire::Status>> {
                let _ = (&args, &ctx);
                match method {
                    #(#call_arms)*
                    other => {
                        let status = ::capwire::Status::new(
                            ::capwire::Code::Unimplemented,
                            ::std::format!("{} has no method `{}`", #interface_str, other),
                        );
                        ::std::boxed::Box::pin(async move { ::core::result::Result::Err(status) })
                    }
                }
            }

            fn call_stream(
                self: ::std::sync::Arc<Self>,
                method: &str,
                args: ::capwire::Value,
                ctx: ::capwire::CallContext,
            ) -> #p::BoxFuture<'static, ::core::result::Result<::capwire::Items, ::capwire::Status>> {
                let _ = (&args, &ctx);
                match method {
                    #(#stream_arms)*
                    other => {
                        let status = ::capwire::Status::new(
                            ::capwire::Code::InvalidArgument,
                            ::std::format!("{} has no stream method `{}`", #interface_str, other),
                        );
                        ::std::boxed::Box::pin(async move { ::core::result::Result::Err(status) })
                    }
                }
            }

            fn is_idempotent(&self, method: &str) -> bool {
                #idem_arms
            }

            fn is_stream(&self, method: &str) -> bool {
                #stream_check
            }

            fn type_name(&self) -> &str {
                #interface_str
            }

            fn schema(&self) -> ::core::option::Option<#p::serde_json::Value> {
                ::core::option::Option::Some(::capwire::typed::interface_schema::<#client>(#name, #version))
            }
        }

    })
}
